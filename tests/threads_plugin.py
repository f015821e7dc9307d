"""Plugin module that changes torch's thread count at import, as some libraries do."""

import torch

torch.set_num_threads(1 if torch.get_num_threads() > 1 else 2)
