"""Configs: the schema (:mod:`.schema`), what identifies a cell and a result (:mod:`.keys`) and the
strict YAML mapping (:mod:`.mapping`). Import from here."""

from memorize.config.keys import (ARCH_FIELDS, NOT_TRAINING_IDENTITY, cell_id, sample_settings, settings_key,
                                  training_identity)
from memorize.config.mapping import (CELL_SECTIONS, absolute_root, from_dict, load_config, parse_yaml, read_yaml,
                                     save_config, set_dotted, to_dict)
from memorize.config.schema import (DATASETS, DEFAULT_SAMPLE_STEPS, SAMPLER_FIELDS, SAMPLERS, check_root_is_read,
                                    described, CellConfig, DataConfig, DiffusionConfig, GMMConfig, ModelConfig,
                                    SampleConfig, TrainConfig)
from memorize.errors import ConfigError

__all__ = ["ARCH_FIELDS", "NOT_TRAINING_IDENTITY", "cell_id", "sample_settings", "settings_key", "training_identity",
           "CELL_SECTIONS", "absolute_root", "from_dict", "load_config", "parse_yaml", "read_yaml", "save_config",
           "set_dotted", "to_dict", "DATASETS", "DEFAULT_SAMPLE_STEPS", "SAMPLER_FIELDS", "SAMPLERS", "CellConfig",
           "DataConfig", "DiffusionConfig", "GMMConfig", "ModelConfig", "SampleConfig", "TrainConfig", "ConfigError",
           "check_root_is_read", "described"]
