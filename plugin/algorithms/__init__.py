"""One module per Processing algorithm; :func:`all_algorithms` lists them for the provider."""


def all_algorithms():
    return []
