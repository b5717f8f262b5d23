"""An input size the user chose (``--input-size``, ``input_size=``) checked
at load with one forward pass: a model built for one size (a ViT's position
embeddings, a fixed-size head) fails here with a typed error naming the size,
not later inside a method with the framework's own exception."""

from __future__ import annotations

import torch

from cnnviz_core.errors import CnnvizError, InputError
from cnnviz_core.toolkit.hooks import eval_mode


def check_input_size(adapter) -> None:
    height, width = adapter.config.input_size
    dummy = torch.zeros((1, 3, height, width), device=adapter.device)
    try:
        with eval_mode(adapter.module), torch.inference_mode():
            adapter.module(dummy)
    except CnnvizError:
        raise  # already says what is wrong (an output key the model lacks)
    except (RuntimeError, AssertionError, ValueError) as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise InputError(f"model {adapter.name!r} cannot run on {height}x{width} inputs ({reason}); give an --input-size "
                         "(input_size=) it was built for") from None
