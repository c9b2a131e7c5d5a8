"""Inference for a user's picture: the saved model, calling it, its files and the ``ouroboros3d`` command.

``pipeline`` (:class:`~ouroboros3d.inference.pipeline.Ouroboros3DPipeline`: saved and loaded the
diffusers way; ``pipe(image, ...)`` is image-to-3D, the one entry point), ``model_folder`` (a saved
model folder read and checked), ``model_card`` (its README.md), ``images`` (a picture prepared as the
model's input view), ``options`` (a generation's options, checked in one place, and its cameras),
``result`` (:class:`~ouroboros3d.inference.result.GenerationResult` and its typed settings),
``generate`` (load and call in one function, for notebooks), ``exports`` (the files of a generation:
``write_outputs``), ``pictures`` (its PNG/GIF/MP4 pictures), ``output_folder`` (a folder written whole),
``cli`` (the command).
"""
