"""Analysis tools: what the channel-attention blocks see, and where the models look.

Two views of trained classification checkpoints, as in the CSA-Net paper:

- ``descriptors`` (the paper's Figures 3 and 5): at the last block of each stage, the per-channel
  z (standardised GAP), q (standardised local Moran's I) and gate weights p of the block's last BN
  output (the gate's input; read whether or not the block has a gate), averaged over the images,
  channels sorted by q ascending, curves smoothed by an exponential moving average.
  z and p come from the gate's own ``descriptors``; q from the gate's own ``autocorrelation`` for
  CSA and from [`spatial_autocorrelation`][csa_lightning.attention.spatial_autocorrelation] with its defaults for
  every other block (q needs no learnt parameters), so the math exists once.
- ``gradcam`` (Figures 4 and 6): Grad-CAM (the ``grad-cam`` package) at the last stage of each
  model, as a grid: rows are images, columns the input and each model.

    python -m csa_lightning.analyze descriptors --ckpt A.ckpt --ckpt B.ckpt --images DIR --out figs/
    python -m csa_lightning.analyze descriptors --ckpt A.ckpt --data configs/demo/digits_csa.yaml
    python -m csa_lightning.analyze gradcam --ckpt A.ckpt --ckpt B.ckpt --images DIR --out figs/

Images are preprocessed as the checkpoint's validation data was (side, centre-crop ratio, mean and
std from the data module's hyperparameters stored in the checkpoint; ``--size``, ``--crop-ratio``,
``--mean``, ``--std`` override). A folder of class sub-folders (torchvision's ImageFolder layout)
gives each image its class; Grad-CAM then explains the true class, otherwise the first model's
prediction.

The package: `csa_lightning.analysis.checkpoints` (loading, stages), `csa_lightning.analysis.images` (reading and
preprocessing), `csa_lightning.analysis.descriptors` (collection, smoothing, plots), `csa_lightning.analysis.gradcam`,
`csa_lightning.analysis.cli` (the command line).
"""

from . import checkpoints, cli, descriptors, gradcam, images

#: every public name of the submodules, read from their own ``__all__`` (no second list to keep equal)
__all__: list = []
for _module in (checkpoints, images, descriptors, gradcam, cli):
    globals().update({name: getattr(_module, name) for name in _module.__all__})
    __all__ += _module.__all__
del _module
