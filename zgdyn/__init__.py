"""zgdyn: the dynamics of Zipfian grokking, recorded and dissected."""

__version__ = "0.1.0"

from .core.config import Config
from .core.config import ConfigError
from .core.config import DataConfig
from .core.config import ModelConfig
from .core.config import OptimConfig
from .core.config import RecordConfig
from .core.config import ScheduleConfig
from .core.config import ZgdynError
from .core.config import load_toml
from .core.data import distribution_stats
from .core.data import make_split
from .core.data import stats_table
from .core.data import zipf_weights
from .core.ensemble import Ensemble
from .core.model import MLP
from .core.model import build_model
from .core.model import functional_logits
from .core.train import Callback
from .core.train import Snapshot
from .core.train import Trainer
from .store.journal import RunFileError
from .store.reader import Run
from .store.reader import open_run
from .store.runner import resume_run
from .store.runner import train_ensemble
from .store.runner import train_run

__all__ = ["__version__", "Config", "ConfigError", "DataConfig", "ModelConfig", "OptimConfig",
           "RecordConfig", "ScheduleConfig", "ZgdynError", "load_toml",
           "distribution_stats", "make_split", "stats_table", "zipf_weights",
           "Ensemble", "MLP", "build_model", "functional_logits", "Callback",
           "Snapshot", "Trainer", "RunFileError", "Run", "open_run", "resume_run",
           "train_ensemble", "train_run"]
