"""Active learning: which galaxies to show a person (acquisition) and where their labels go (store).

    from labelling.acquisition import entropy, rank
    from labelling.store import LabelStore

Imports only the core (galaxy_morph), numpy and SQLAlchemy: no torch, TorchServe or Streamlit.
"""
