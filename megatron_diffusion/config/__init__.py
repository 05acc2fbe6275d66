"""The run configuration: ``run`` holds ``RunConfig`` and the sections that live nowhere else
(optimizer, parallel, training); ``loader`` builds one from YAML and overrides."""

from megatron_diffusion.config.loader import (config_from_dict, flatten, load_config,
                                              parse_override, read_yaml)
from megatron_diffusion.config.run import (AdamWConfig, ParallelConfig, RunConfig,
                                           TrainingConfig)

__all__ = ["AdamWConfig", "ParallelConfig", "RunConfig", "TrainingConfig", "config_from_dict",
           "flatten", "load_config", "parse_override", "read_yaml"]
