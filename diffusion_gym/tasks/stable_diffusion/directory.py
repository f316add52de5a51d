"""A local diffusers pipeline directory, as both Stable Diffusion envs read it: which pipeline it
holds (``model_index.json``), its parts (nothing is downloaded), whether it can encode text, and the
``transformers`` import text encoding and the CLIP scorers need."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

FLOW_PREFIXES = ("StableDiffusion3", "Flux")
"""Pipeline class names of the flow family (their img2img, inpainting, ... variants included)."""


def require(model_path: str | Path, sub: str, layout: str) -> Path:
    """``model_path / sub``, or FileNotFoundError naming ``layout``, what the directory must be."""
    path = Path(model_path) / sub
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: model_path must be {layout}; nothing is downloaded")
    return path


def pipeline_name(model_path: str | Path) -> str | None:
    """The pipeline class a directory's ``model_index.json`` names (None without one): what decides
    which env takes the directory."""
    index = Path(model_path) / "model_index.json"
    return json.loads(index.read_text()).get("_class_name") if index.is_file() else None


def is_flow_pipeline(name: str | None) -> bool:
    return name is not None and name.startswith(FLOW_PREFIXES)


def has_text_encoders(model_path: str | Path) -> bool:
    """Whether the directory has every tokenizer and text encoder its ``model_index.json`` lists (without
    one: ``tokenizer/`` and ``text_encoder/``), what text prompts need."""
    index = Path(model_path) / "model_index.json"
    if index.is_file():
        listed = json.loads(index.read_text()).items()
        parts = [k for k, v in listed if k.startswith(("tokenizer", "text_encoder")) and v and v[0] is not None]
    else:
        parts = ["tokenizer", "text_encoder"]
    return bool(parts) and all((Path(model_path) / p).is_dir() for p in parts)


def import_transformers(purpose: str) -> ModuleType:
    """``transformers``, or ImportError saying that ``purpose`` needs it (it is the ``sd`` extra)."""
    try:
        import transformers
    except ImportError as e:  # pragma: no cover - depends on the installation
        raise ImportError(f"{purpose} needs transformers (pip install transformers)") from e
    return transformers
