"""zgdyn: the dynamics of Zipfian grokking, recorded and dissected."""

__version__ = "0.1.0"

from .config import Config as Config
from .config import ConfigError as ConfigError
from .config import DataConfig as DataConfig
from .config import ModelConfig as ModelConfig
from .config import OptimConfig as OptimConfig
from .config import RecordConfig as RecordConfig
from .config import ScheduleConfig as ScheduleConfig
from .config import ZgdynError as ZgdynError
from .config import load_toml as load_toml
from .data import distribution_stats as distribution_stats
from .data import make_split as make_split
from .data import stats_table as stats_table
from .data import zipf_weights as zipf_weights
from .model import MLP as MLP
from .model import build_model as build_model
from .model import functional_logits as functional_logits
from .ensemble import Ensemble as Ensemble
from .runner import resume_run as resume_run
from .runner import train_ensemble as train_ensemble
from .runner import train_run as train_run
from .store import Run as Run
from .store import RunFileError as RunFileError
from .store import open_run as open_run
from .train import Callback as Callback
from .train import Snapshot as Snapshot
from .train import Trainer as Trainer
