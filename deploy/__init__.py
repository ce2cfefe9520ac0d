"""kimi-deploy: plan, download, render, launch and check self-hosted Kimi-K2.5 deployments.

The library API mirrors the CLI verbs, one module each::

    from deploy.hardware.profiles import load_profile
    from deploy.planning.planner import plan
    from deploy.planning.request import PlanRequest
    result = plan(load_profile("hardware/h200x8.yaml"), PlanRequest(model="kimi-k2.5"))
    print(result.chosen_candidate.id)
"""

__version__ = "0.1.0"
