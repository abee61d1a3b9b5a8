"""The floor everything stands on: the config, the task's data, the model, the fused
training step and its optimizers, step hooks, the training loop and ensembles. It opens
no file."""
