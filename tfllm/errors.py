"""User-facing errors: each is printed as one line by the command wrappers, never a traceback."""


class TfllmError(Exception):
    """A mistake in the user's input (config, data, paths) that the user can fix."""


class ConfigError(TfllmError):
    """An invalid config file, key, type or value."""


class DataError(TfllmError):
    """A missing, empty or damaged corpus, shard or manifest."""


class StrategyError(TfllmError):
    """A tf.distribute strategy that cannot start on this machine (no TPU, bad TF_CONFIG, ...)."""
