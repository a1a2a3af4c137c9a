import pytest

from remora.controlplane.model import AUTO, HTTP, TCP, UDP, port_protocol
from remora.controlplane.protocol import GRPC, HTTP2, HTTPS, MYSQL
from remora.resources.objects import ServicePort


@pytest.mark.parametrize(("name", "app", "proto", "expected"), [
    ("", "", "TCP", AUTO),            # the seed's unnamed 18080: sniffed
    ("http", "", "TCP", HTTP),
    ("http-web", "", "TCP", HTTP),
    ("http2", "", "TCP", HTTP2),
    ("grpc-api", "", "TCP", GRPC),
    ("tcp-db", "", "TCP", TCP),
    ("mysql", "", "TCP", MYSQL),
    ("https", "", "TCP", HTTPS),
    ("web", "", "TCP", AUTO),
    ("tcp", "http", "TCP", HTTP),     # appProtocol wins over the name
    ("", "kubernetes.io/h2c", "TCP", HTTP2),
    ("dns", "", "UDP", UDP),
])
def test_protocol_selection_like_istio(name: str, app: str, proto: str, expected: str) -> None:
    port = ServicePort(port=80, targetPort=80, name=name, protocol=proto, appProtocol=app)
    assert port_protocol(port) == expected
