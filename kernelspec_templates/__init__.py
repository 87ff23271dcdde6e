"""kernel.json templates the installer writes from: data, a package only so importlib.resources finds them."""
