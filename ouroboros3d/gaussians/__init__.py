"""3D Gaussians: the container, their rendering and their meshing.

``container`` (:class:`~ouroboros3d.gaussians.container.Gaussians` and the 3DGS ``.ply``),
``splatting`` (differentiable rasterisation: a pure-PyTorch reference and gsplat's CUDA path
behind one function), ``meshing`` (TSDF fusion and marching cubes to a coloured mesh).
"""
