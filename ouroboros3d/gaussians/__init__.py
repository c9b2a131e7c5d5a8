"""3D Gaussians: the container, their rendering and their meshing.

``container`` (:class:`~ouroboros3d.gaussians.container.Gaussians` and the 3DGS ``.ply``),
``projection`` (EWA projection into cameras, culling), ``splatting`` (differentiable
rasterisation: a pure-PyTorch backend and gsplat's CUDA path behind one function, and a dense
reference the tests hold them to), ``meshing`` (TSDF fusion and marching cubes to a coloured mesh).
"""
