"""Training: the loop and what it reads and writes.

``loop`` (Algorithm 1's and the pretraining objectives' loop with accelerate, exact resume),
``batches`` (each step's objects and random draws, a function of (seed, step), and the loader
that reads them ahead), ``state`` (the EMA, the checkpoint file and its folder's lock),
``validation`` (quick scores on the validation split for learning curves), ``tracking`` (the
dvclive log of a run).
"""
