from .base import Capabilities, PreparedInputs, Provider
from .offline import OfflineProvider
