"""How tests/golden/index-format-1 was made: run with crossmodal at commit ffe94cd (index format 1).

    python tests/golden/index-format-1/make.py tests/golden/index-format-1
    rm tests/golden/index-format-1/idx/.lock tests/golden/index-format-1/idx/.writer.lock

``idx/`` is an index as that code wrote it (6 image and 3 caption vectors saved, then one
image removed and 2 added without a save, so the journal and an orphan vector are in it);
``vectors.npz`` holds the vectors and keys the tests check it against. tests/test_index.py
opens a copy with the current code and compares the layout of a new index with it.
"""
import shutil, sys
from pathlib import Path
import numpy as np
from crossmodal.index import Index

out = Path(sys.argv[1])
if out.exists():
    shutil.rmtree(out)
out.mkdir(parents=True)
rng = np.random.default_rng(11)
img = rng.standard_normal((6, 8)).astype(np.float32)
txt = rng.standard_normal((3, 8)).astype(np.float32)
later = rng.standard_normal((2, 8)).astype(np.float32)
idx = Index.create(out / "idx", bundle="fake-clip", space="fake-space", dim=8, root="/photos",
                   info={"variant": "cpu-fp32"})
keys = idx.add(img, [{"path": f"photo{i}.jpg", "caption": f"caption {i}", "sha256": None, "album": i % 2}
                     for i in range(6)])
idx.add(txt, [{"path": f"photo{i}.jpg", "caption": f"caption {i}"} for i in range(3)], tower="text")
idx.save()
idx.remove([int(keys[5])])          # removed after the save: an orphan vector in the graph file
idx.add(later, [{"path": f"late{i}.jpg"} for i in range(2)])  # journaled, never saved
idx.close()
np.savez(out / "vectors.npz", image=img, text=txt, later=later, keys=keys)
