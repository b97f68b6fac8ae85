"""What loading a stance model directory may unpickle, and when that is allowed.

No file this pipeline writes into a model directory needs a pickle: transformer and encoder weights are
safetensors, the encoder head and the calibration are JSON, and the tfidf kind's sklearn pipeline is a skops file
(`model.skops`) loaded against an allow-list of the types such a pipeline is made of (SKLEARN_TYPES). Two files
that other tools write are pickles:
  * a tfidf model saved before skops (`model.joblib`): it is unpickled only from the MLflow store or
    paths.output_root, or with predict.trust_model_dir=true (check_model_dir, called before anything is loaded);
  * a PyTorch checkpoint (`pytorch_model.bin`): torch loads it with its weights-only unpickler, which refuses
    anything but tensors; a refusal is one error saying to save the model as safetensors (load_error).
The decision holds for every file that would be unpickled, wherever its path came from: each file's real path
(symlinks followed) decides, and a nested model directory (a hybrid's inner model, the model inside an MLflow model)
must lie inside its parent (nested_dir).
"""

from __future__ import annotations

import json
import logging
import pickle
import zipfile
from pathlib import Path

from omegaconf import OmegaConf

from pipeline.core.errors import PipelineError

log = logging.getLogger(__name__)

SKLEARN_FILE = "model.skops"     # the tfidf kind's sklearn pipeline (skops: no code runs when it is loaded)
LEGACY_PICKLE = "model.joblib"   # the same, as written before skops: a pickle
TRUST_KEY = "predict.trust_model_dir"
# The locations whose model directories this project wrote itself: a legacy pickle there is loaded.
TRUSTED_ROOT_KEYS = ("tracking.artifact_root", "paths.output_root")

# Every type a tfidf stance model's sklearn pipeline is made of (pipeline.models.tfidf.build_tfidf_pipeline, or a plain
# make_pipeline(TfidfVectorizer(), LogisticRegression())), by fully qualified name. A skops file holding any other
# type is refused before it is loaded; skops itself refuses types it does not trust on top of this.
SKLEARN_TYPES = frozenset({
    "builtins.dict", "builtins.list", "builtins.tuple", "builtins.str", "builtins.int", "builtins.float",
    "builtins.bool", "builtins.NoneType",
    "numpy.ndarray", "numpy.dtype", "numpy.float64", "numpy.float32", "numpy.int64", "numpy.int32",
    "sklearn.pipeline.Pipeline", "sklearn.pipeline.FeatureUnion",
    "sklearn.feature_extraction.text.TfidfVectorizer", "sklearn.feature_extraction.text.TfidfTransformer",
    "sklearn.linear_model._logistic.LogisticRegression",
})


# ---------------------------------------------------------------- the tfidf kind's sklearn pipeline

def save_sklearn(pipe, model_dir: Path | str) -> Path:
    """Write a fitted sklearn pipeline as `model.skops` (temp file, then rename)."""
    import skops.io

    from pipeline.core.io import atomic_path

    target = Path(model_dir) / SKLEARN_FILE
    with atomic_path(target) as tmp:
        skops.io.dump(pipe, tmp)
    return target


def sklearn_file(model_dir: Path | str) -> Path:
    """The file a tfidf model's pipeline is loaded from: model.skops, else a legacy model.joblib."""
    model_dir = Path(model_dir)
    if not (model_dir / SKLEARN_FILE).exists() and (model_dir / LEGACY_PICKLE).exists():
        return model_dir / LEGACY_PICKLE
    return model_dir / SKLEARN_FILE


def skops_types(path: Path) -> set[str]:
    """The fully qualified names of every object type a skops file holds (read from its schema, nothing loaded)."""
    found: set[str] = set()

    def walk(node):
        if isinstance(node, dict):
            if "__class__" in node and "__module__" in node:
                found.add(f"{node['__module__']}.{node['__class__']}")
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    with zipfile.ZipFile(path) as archive:
        walk(json.loads(archive.read("schema.json")))
    return found


def load_sklearn(model_dir: Path | str):
    """The fitted sklearn pipeline of a tfidf model directory. A legacy model.joblib is unpickled here: whoever
    fetched the directory has decided it may be (check_model_dir)."""
    path = sklearn_file(model_dir)
    if not path.exists():
        raise PipelineError(f"{path}: missing; a tfidf stance model needs its fitted sklearn pipeline (re-train it)")
    if path.name == LEGACY_PICKLE:
        import joblib

        log.warning("%s: a pickle (written before model.skops); re-train the model to store it as skops", path)
        return joblib.load(path)
    import skops.io

    try:
        foreign = sorted(skops_types(path) - SKLEARN_TYPES)
        if foreign:
            raise PipelineError(f"{path}: holds types a tfidf stance model is not made of ({', '.join(foreign[:5])}); "
                                "it is refused unloaded: re-train the model with `pipeline train model=tfidf`")
        return skops.io.load(path, trusted=sorted(SKLEARN_TYPES))
    except (zipfile.BadZipFile, KeyError, TypeError, ValueError, OSError) as exc:
        raise PipelineError(f"{path}: not a readable skops file ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
                            "copy it again or re-train the model") from None


# ---------------------------------------------------------------- nested model directories

def nested_dir(parent: Path | str, name, *, source: str) -> Path:
    """`parent/name` for a model directory named inside another one's files (`source` names the file), refused
    unless its real path lies inside the parent's: an absolute name, `..` or a symlink cannot reach elsewhere."""
    parent = Path(parent)
    if not isinstance(name, str) or not name or Path(name).is_absolute() or ".." in Path(name).parts:
        raise PipelineError(f"{parent / source}: names the model directory {name!r}, which is not a path inside "
                            f"{parent}; a nested model must live in its parent directory: re-train or re-download it")
    target = parent / name
    if not target.resolve().is_relative_to(parent.resolve()):
        raise PipelineError(f"{target}: leads to {target.resolve()}, outside {parent}; a nested model must live in "
                            "its parent directory (not a symlink to elsewhere): re-train or re-download it")
    return target


def unpickled_files(model_dir: Path | str) -> list[Path]:
    """The real paths of the files that loading `model_dir` (pipeline.models.base.load_predictor) would unpickle
    with a full unpickler; its nested model directories are checked on the way."""
    from pipeline.models import kinds
    from pipeline.models.base import read_model_metadata

    model_dir = Path(model_dir)
    module = kinds.loader(read_model_metadata(model_dir)["kind"])
    # safetensors weights (a .bin goes through torch's weights-only unpickler) and JSON heads unpickle nothing;
    # a kind that may (tfidf's legacy pickle, a hybrid's inner model) says so.
    hook = getattr(module, "unpickled_files", None)
    return list(hook(model_dir)) if hook else []


# ---------------------------------------------------------------- the trust decision

def trusted_by_location(cfg, path: Path) -> bool:
    """Whether a (real) path lies in the MLflow store's artifacts or under paths.output_root."""
    for key in TRUSTED_ROOT_KEYS:
        root = OmegaConf.select(cfg, key, default=None)
        if root and path.is_relative_to(Path(str(root)).resolve()):
            return True
    return False


def check_model_dir(cfg, model_dir: Path | str, *, key: str, shown: str, origin: str) -> None:
    """Refuse, before anything is loaded, a model directory whose loading would unpickle a file from a source
    not trusted. `origin`: "store" (fetched from the configured MLflow store: trusted), "local" (a directory
    given by path: each file's real path decides) or "remote" (downloaded from elsewhere: not trusted).
    predict.trust_model_dir=true trusts any. `shown` is the value of `key` as given, for the message."""
    pickles = unpickled_files(model_dir)  # also refuses nested directories that lead outside their parent
    if not pickles or origin == "store" or bool(OmegaConf.select(cfg, TRUST_KEY, default=False)):
        return
    outside = [p for p in pickles if origin == "remote" or not trusted_by_location(cfg, p)]
    if outside:
        where = "was downloaded from outside the MLflow store" if origin == "remote" else \
            "lies outside the MLflow store and paths.output_root"
        raise PipelineError(
            f"{key}={shown}: {outside[0]} is a pickle (loading it can run any code) and {where}; if you trust where "
            f"it came from, add {TRUST_KEY}=true, else re-train it (`pipeline train` stores a tfidf model as skops) "
            "and use its runs:/ or models:/ URI")


# ---------------------------------------------------------------- weights files

def load_error(model_dir: Path | str, exc: BaseException, what: str = "the transformer model") -> PipelineError:
    """One line for a model whose weights cannot be loaded: a pickled checkpoint torch refused, a truncated or
    corrupt safetensors file, or anything else transformers raised."""
    from safetensors import SafetensorError

    model_dir = Path(model_dir)
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if isinstance(exc, pickle.UnpicklingError):
        # torch's message advises retrying with weights_only=False, which would run the pickle: not relayed.
        reason = next((line.rstrip(".") for line in lines if "global" in line.lower()), "it holds more than tensors")
        bins = sorted(model_dir.glob("*.bin"))
        shown = bins[0] if bins else model_dir
        return PipelineError(f"{shown}: a pickled PyTorch checkpoint that torch refused to load ({reason}); a model "
                             "must be saved as safetensors (save_pretrained writes model.safetensors): re-save it "
                             "where it was made, or re-train it")
    if isinstance(exc, SafetensorError):
        files = sorted(model_dir.glob("*.safetensors"))
        shown = files[0] if len(files) == 1 else model_dir
        return PipelineError(f"{shown}: not a complete safetensors file ({lines[0] if lines else 'unreadable'}); it is "
                             "truncated or corrupt: copy or download the model again, or re-train it")
    return PipelineError(f"{model_dir}: cannot load {what} ({lines[0] if lines else type(exc).__name__}); "
                         "re-train or re-download it")


def unsafe_weights_errors() -> tuple[type[BaseException], ...]:
    """What loading weights raises for a pickled checkpoint torch refused, or a truncated / corrupt safetensors file."""
    from safetensors import SafetensorError

    return pickle.UnpicklingError, SafetensorError


def weights_errors() -> tuple[type[BaseException], ...]:
    """The exceptions load_error turns into one line when a stance model is loaded."""
    return OSError, ValueError, *unsafe_weights_errors()
