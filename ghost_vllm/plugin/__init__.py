"""vLLM plugin (filled in by the plugin work)."""


def register() -> None:  # placeholder until the plugin lands; registering nothing is harmless
    return None
