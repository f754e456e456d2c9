"""A stand-in for a run killed between epochs: stops training after ``epochs`` epochs while the
trainer's max_epochs (and so a cosine schedule's length) stays what the full run has."""

import lightning as L


class StopAfterEpochs(L.Callback):
    def __init__(self, epochs: int = 1) -> None:
        self.epochs = epochs

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True
