"""zgdyn: the dynamics of Zipfian grokking, recorded and dissected."""

__version__ = "0.1.0"

from .core.config import Config as Config
from .core.config import ConfigError as ConfigError
from .core.config import DataConfig as DataConfig
from .core.config import ModelConfig as ModelConfig
from .core.config import OptimConfig as OptimConfig
from .core.config import RecordConfig as RecordConfig
from .core.config import ScheduleConfig as ScheduleConfig
from .core.config import ZgdynError as ZgdynError
from .core.config import load_toml as load_toml
from .core.data import distribution_stats as distribution_stats
from .core.data import make_split as make_split
from .core.data import stats_table as stats_table
from .core.data import zipf_weights as zipf_weights
from .core.ensemble import Ensemble as Ensemble
from .core.model import MLP as MLP
from .core.model import build_model as build_model
from .core.model import functional_logits as functional_logits
from .core.train import Callback as Callback
from .core.train import Snapshot as Snapshot
from .core.train import Trainer as Trainer
from .store.journal import RunFileError as RunFileError
from .store.reader import Run as Run
from .store.reader import open_run as open_run
from .store.runner import resume_run as resume_run
from .store.runner import train_ensemble as train_ensemble
from .store.runner import train_run as train_run
