"""The control side of the core: what is measured, what a policy sees, and what the controller decides.

- metrics, monitor, snapshot: per-lane windows, and the frozen view built from them each tick
- objectives, stream_health: what each traffic class was promised, and how the stream keeps it
- weights: the traffic split as a value
- protocol: what a policy is and what it proposes (Proposal)
- switching, switching_table, switching_params, switching_record, actions: the switching controller,
  its state table, its parameters, its state as data, and its outputs
- capacity: the replicas each autoscaled lane needs, decided each tick like the weights
- replicas: many router replicas' measurements added up for one leader
- loop: the control loop that ties monitor, policy, controller and capacity rule together

What must not live here: the path of one request (policies.path) and the built-in policies
(policies.builtin). Nothing here imports either.
"""
