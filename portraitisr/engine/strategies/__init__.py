"""mmengine ``FlexibleRunner`` strategies (``STRATEGIES``): sharded training with FSDP2."""
from .fsdp2_strategy import FSDP2Strategy, gather_rank_random_states, select_rank_random_state

__all__ = ['FSDP2Strategy', 'gather_rank_random_states', 'select_rank_random_state']
