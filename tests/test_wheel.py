"""The wheel ships what an installed crossmodal reads at run time: every sub-package, the model cards, the calibration images.

The installed-wheel test builds the wheel from a copy of the tree, installs it
into a fresh venv (dependencies borrowed from this environment through a .pth
line, which adds a path but runs none of that environment's .pth hooks, so the
editable install of this checkout stays out), and runs from another directory
in isolated mode: nothing of the source checkout is importable there.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _setuptools_config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]


def _package_folders(root: Path) -> list[Path]:
    """The folders under ``root`` that are packages: each, and every folder between it and ``root``, has an
    ``__init__.py`` (as setuptools' package discovery reads it). A folder that is not one (bench/results with a
    benchmark's virtualenv in it, users' bundles under models/) is not looked into."""
    if not (root / "__init__.py").is_file():
        return []
    found = [root]
    for child in sorted(root.iterdir()):
        if child.is_dir() and child.name != "__pycache__":
            found += _package_folders(child)
    return found


def test_package_discovery_does_not_look_into_folders_that_are_not_packages(tmp_path: Path) -> None:
    for folder in ("pkg", "pkg/sub", "pkg/results/venv/site/lib", "pkg/data"):
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
    for folder in ("pkg", "pkg/sub", "pkg/results/venv/site/lib"):  # results/ itself has none
        (tmp_path / folder / "__init__.py").write_text("")
    assert _package_folders(tmp_path / "pkg") == [tmp_path / "pkg", tmp_path / "pkg" / "sub"]
    assert _package_folders(tmp_path / "pkg" / "data") == []


def _data_folders(cfg: dict, package: str) -> set[str]:
    """First path components of ``package``'s package-data globs (``cards/*.json`` -> ``cards``)."""
    return {glob.split("/", 1)[0] for glob in cfg.get("package-data", {}).get(package, []) if "/" in glob}


def test_every_package_folder_is_listed_in_pyproject() -> None:
    cfg = _setuptools_config()
    found = set()
    for name, folder in cfg["package-dir"].items():
        root = ROOT / folder
        for pkg in _package_folders(root):
            found.add(".".join([name, *pkg.relative_to(root).parts]))
    assert {"crossmodal.models", "crossmodal.examples", "crossmodal.export.cli"} <= found
    assert sorted(found) == sorted(cfg["packages"]), "a sub-package missing from pyproject's packages is left out of the wheel"


def _copy_tree(dst: Path) -> None:
    """What a build needs: pyproject, README and the mapped folders' packages with their package-data folders;
    not caches, exported bundles or benchmark results (bench/results can hold gigabytes)."""
    cfg = _setuptools_config()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dst / name)
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    for name, folder in cfg["package-dir"].items():
        root = ROOT / folder
        packages = {pkg: ".".join([name, *pkg.relative_to(root).parts]) for pkg in _package_folders(root)}

        def ignore(path: str, names: list[str], packages: dict[Path, str] = packages) -> set[str]:
            out = set(skip(path, names))
            here = Path(path)
            if here in packages:  # a package: its sub-packages and declared data folders, no other folder
                data = _data_folders(cfg, packages[here])
                out |= {n for n in names if (here / n).is_dir() and here / n not in packages and n not in data}
            return out

        shutil.copytree(root, dst / folder, ignore=ignore)


_CHECK = """
import json, sys
from pathlib import Path
import crossmodal
from crossmodal.export.albef_checkpoint import card_names, read_config_file
from crossmodal.export.mbert import find_card, load_cards
from crossmodal.export.resources import calibration_images

images = calibration_images()
print(json.dumps({
    "crossmodal": crossmodal.__file__,
    "cwd_on_path": any(p in ("", ".") for p in sys.path),
    "albef_cards": sorted(card_names()),
    "albef_4m": read_config_file("albef_4m").get("config_name"),
    "mbert_cards": len(load_cards()),
    "mbert_match": (find_card("sentence-transformers/clip-ViT-B-32-multilingual-v1") or {}).get("card_name"),
    "images": None if images is None else str(images),
    "image_files": [] if images is None else sorted(p.name for p in images.iterdir()),
}))
"""


def test_installed_wheel_finds_cards_and_calibration_images(tmp_path: Path) -> None:
    src, dist, elsewhere = tmp_path / "src", tmp_path / "dist", tmp_path / "elsewhere"
    for d in (src, dist, elsewhere):
        d.mkdir()
    _copy_tree(src)
    # An exported bundle in the tree must stay out of the wheel.
    (src / "models" / "my-bundle" / "image").mkdir(parents=True)
    (src / "models" / "my-bundle" / "bundle.json").write_text("{}")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist),
                    str(src)], cwd=tmp_path, check=True, capture_output=True, timeout=300)
    wheel = next(dist.glob("crossmodal-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "crossmodal/models/cards/albef_4m.json" in names
    assert "crossmodal/examples/images/red_circle.png" in names
    assert "crossmodal/serve/static/index.html" in names
    assert not any("my-bundle" in n for n in names)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index",
                    str(wheel)], check=True, capture_output=True, timeout=300)
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "borrowed_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    proc = subprocess.run([str(python), "-I", "-c", _CHECK], cwd=elsewhere, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(got["crossmodal"]).is_relative_to(site) and not got["cwd_on_path"]
    assert got["albef_cards"] == ["albef_14m", "albef_4m", "retrieval_coco", "retrieval_flickr"]
    assert got["albef_4m"] == "albef_4m"
    assert got["mbert_cards"] == len(list((ROOT / "models" / "cards").glob("mbert-*.json"))) > 0
    assert got["mbert_match"] == "mbert-clip-vit-b-32-multilingual-v1"
    assert Path(got["images"]).is_relative_to(site)
    assert got["image_files"] == sorted(p.name for p in (ROOT / "examples" / "images").iterdir() if p.is_file())

    cli = subprocess.run([str(venv / "bin" / "crossmodal"), "export", "albef", "--help"], cwd=elsewhere,
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0 and "--config" in cli.stdout, cli.stderr
