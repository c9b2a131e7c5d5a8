"""Inference for a user's picture: the saved model and the ``ouroboros3d`` command.

``pipeline`` (:class:`~ouroboros3d.inference.pipeline.Ouroboros3DPipeline`, saved and loaded
the diffusers way), ``model_folder`` (reading a saved model folder, its params and device),
``images`` (a picture prepared as the model's input view), ``generate`` (Algorithm 2 on one
picture), ``exports`` (the files of a generation), ``cli`` (the command).
"""
