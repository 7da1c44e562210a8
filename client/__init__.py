"""shopclip.client: typed python client for the shopclip gRPC API (sync and asyncio).

Needs only grpcio and protobuf (the package's base install):

    from shopclip.client import ShopclipClient
    with ShopclipClient("localhost:50051", token="...", tls_ca="ca.pem") as client:
        result = client.classify(ProductInput(designation="Lot de 3 coussins déco", image=jpeg_bytes))
        print(result.code, result.predictions[0].probability, result.abstain)

Every failed call raises `ShopclipRpcError` (status `code` + server `details`).
"""

from shopclip.client.aio import AsyncShopclipClient
from shopclip.client.config import ClientConfig
from shopclip.client.errors import ShopclipRpcError
from shopclip.client.results import (ClassifyResult, EmbedResult, FeedbackResult, Info, Neighbor, Prediction,
                                     SearchResult, Versions)
from shopclip.client.retry import NO_RETRY, RetryPolicy
from shopclip.client.sync import ShopclipClient
from shopclip.products import ProductInput

__all__ = ["AsyncShopclipClient", "ClassifyResult", "ClientConfig", "EmbedResult", "FeedbackResult", "Info",
           "NO_RETRY", "Neighbor",
           "Prediction", "ProductInput", "RetryPolicy", "SearchResult", "ShopclipClient", "ShopclipRpcError",
           "Versions"]
