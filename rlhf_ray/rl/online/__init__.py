"""Online reward training inside the RL job (issue 27; in progress): the pure parts, testable
without Ray.

    requests.py   which of a step's samples to ask about (best_vs_worst, random, disagreement)
    labellers.py  gold and queue labellers behind one interface; the label budget
    replay.py     what a refresh trains on: fresh labels, earlier ones, the original data

Not built yet: the RM trainer group in `rlhf-ray rloo`, the versioned scorer weights, the refresh in
the driver loop (see the README's Online reward training).
"""
