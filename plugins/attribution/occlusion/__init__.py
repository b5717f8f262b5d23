"""Occlusion and its engines: batched windows, runner choice, incremental inference, coarse-to-fine."""
