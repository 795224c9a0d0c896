"""One module per Processing algorithm; :func:`all_algorithms` lists them for the provider."""


def all_algorithms():
    from .classify import ClassifyAlgorithm
    from .evaluate import EvaluateAlgorithm
    from .pretrain import PretrainAlgorithm
    from .query import QueryAlgorithm
    from .retrieve import RetrieveAlgorithm
    from .split import SplitAlgorithm
    from .train import TrainAlgorithm

    return [TrainAlgorithm(), ClassifyAlgorithm(), QueryAlgorithm(), RetrieveAlgorithm(), EvaluateAlgorithm(),
            SplitAlgorithm(), PretrainAlgorithm()]
