# The experiment config: config.yaml, with what --configfile and --config give over it.
from snakemake.exceptions import WorkflowError
from snakemake.utils import update_config

from complora.configcheck import load_config_file
from complora.errors import ComploraError

BASE_CONFIG = "config.yaml"

try:
    merged = load_config_file(BASE_CONFIG)
except ComploraError as error:
    raise WorkflowError(str(error)) from None
update_config(merged, config)
config.clear()
config.update(merged)
