"""Online reward training inside the RLOO job (issue 27, `online_rm`): the RM trainers refreshed from
labels on the current policy's samples.

    requests.py   which of a step's samples to ask about (best_vs_worst, random, disagreement)
    labellers.py  gold and queue labellers behind one interface; the label budget
    replay.py     what a refresh trains on: fresh labels, earlier ones, the original data
    refresh.py    the RM trainer group in the job and one refresh of it
    driver.py     the driver's side: when a refresh starts, runs beside the steps and is loaded;
                  the upfront schedule (the frozen arm)

What is not built yet: README, Online reward training.
"""
