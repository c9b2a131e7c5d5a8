"""Training: the loop and what it writes.

``loop`` (Algorithm 1's and the pretraining objectives' loop with accelerate, EMA, exact
resume), ``validation`` (quick scores on the validation split for learning curves),
``tracking`` (the dvclive log of a run).
"""
