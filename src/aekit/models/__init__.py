"""One file per autoencoder family; see aekit.registry for the name -> (Config, Model) table."""

__all__: list[str] = []
