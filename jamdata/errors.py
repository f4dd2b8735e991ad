"""Exceptions that mean 'the user's input or config is wrong' (printed without a traceback)."""
from jamdata.config import ConfigError
from jamdata.formats.megatron import IndexedDatasetError
from jamdata.formats.wds import ShardError
from jamdata.io import InputError, OutputDirError
from jamdata.manifest import ManifestError, OutputLockedError
from jamdata.vocab import VocabMismatchError
from schemas.records import SchemaError

USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError, InputError, ManifestError, OutputLockedError, VocabMismatchError, SchemaError,
    ShardError, IndexedDatasetError, FileNotFoundError, PermissionError,
)

from jamdata.text.sampling import PlanError  # noqa: E402
from jamdata.text.tokenizer import TokenizerError  # noqa: E402

USER_ERRORS += (PlanError, TokenizerError)

from jamdata.loader.sources import LoaderError  # noqa: E402

USER_ERRORS += (LoaderError,)


class ModelError(ValueError):
    """Model weights or a fusion request that cannot be used (jamtrain.models)."""


USER_ERRORS += (ModelError,)

USER_ERRORS += (OutputDirError,)
