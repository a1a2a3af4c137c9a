import pytest

from remora.controlplane.model import AUTO, HTTP, TCP, UDP, port_protocol
from remora.resources.objects import ServicePort


@pytest.mark.parametrize(("name", "app", "proto", "expected"), [
    ("", "", "TCP", AUTO),            # the seed's unnamed 18080: sniffed
    ("http", "", "TCP", HTTP),
    ("http-web", "", "TCP", HTTP),
    ("http2", "", "TCP", HTTP),
    ("grpc-api", "", "TCP", HTTP),
    ("tcp-db", "", "TCP", TCP),
    ("mysql", "", "TCP", TCP),
    ("https", "", "TCP", TCP),
    ("web", "", "TCP", AUTO),
    ("tcp", "http", "TCP", HTTP),     # appProtocol wins over the name
    ("", "kubernetes.io/h2c", "TCP", HTTP),
    ("dns", "", "UDP", UDP),
])
def test_protocol_selection_like_istio(name: str, app: str, proto: str, expected: str) -> None:
    port = ServicePort(port=80, targetPort=80, name=name, protocol=proto, appProtocol=app)
    assert port_protocol(port) == expected
