"""What runs inside a TorchServe worker, packed into every archive beside the core (galaxy_morph):

    handlers.galaxy_handler   the model handler: decode, transform, forward, answer, Grad-CAM, card
    handlers.workflow         the galaxy-ensemble workflow's function nodes (pre, ensemble)
    handlers.payload          request parsing and error bodies shared by both
"""
