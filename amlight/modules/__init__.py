"""nn.Modules and the attention machinery: structure guidance, exemplar attention, categorical cost."""
from amlight.modules.adapter import AMAdapter
from amlight.modules.attention_modes import ATTENTION_MODES, BLOCK_GROUPS
from amlight.modules.categorical_cost import categorical_cost
from amlight.modules.exemplar_context import ExemplarContext
from amlight.modules.exemplar_unet import ExemplarUNet
from amlight.modules.label_resize import resize_labels
from amlight.modules.structure_guidance import StructureGuidance

__all__ = [
    "AMAdapter",
    "ATTENTION_MODES",
    "BLOCK_GROUPS",
    "ExemplarContext",
    "ExemplarUNet",
    "StructureGuidance",
    "categorical_cost",
    "resize_labels",
]
