"""gRPC server reflection under both names tools use: ``grpc.reflection.v1`` and the older
``grpc.reflection.v1alpha``.

grpcio-reflection (1.85) ships only v1alpha. v1 is the same protocol renamed: the same messages
with the same field names and numbers, so the same bytes. The one servicer therefore answers
both: under v1 through a generic handler using the v1alpha message classes, and the v1 file
descriptor (v1alpha's, with the package renamed) is added to the descriptor pool, so that a
tool which lists the services and then asks for each one's descriptor can resolve every name.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc
import grpc.aio
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha._async import ReflectionServicer  # public as reflection.aio (untyped)

V1ALPHA_SERVICE = reflection.SERVICE_NAME  # grpc.reflection.v1alpha.ServerReflection
V1_PACKAGE = "grpc.reflection.v1"
V1_SERVICE = f"{V1_PACKAGE}.ServerReflection"
V1_FILE = "grpc/reflection/v1/reflection.proto"


def _add_v1_descriptor(pool: descriptor_pool.DescriptorPool) -> None:
    """Put grpc/reflection/v1/reflection.proto in the pool, derived from v1alpha's (adding the
    same file twice is allowed, so a second server in one process is fine)."""
    old = f".{reflection_pb2.DESCRIPTOR.package}."
    new = f".{V1_PACKAGE}."
    fdp = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(fdp)
    fdp.name = V1_FILE
    fdp.package = V1_PACKAGE
    fdp.ClearField("options")  # v1alpha's are java/go package names and deprecated = true
    for message in fdp.message_type:
        for field in message.field:
            if field.HasField("type_name"):  # message and enum fields only
                field.type_name = field.type_name.replace(old, new)
    for service in fdp.service:
        for method in service.method:
            method.input_type = method.input_type.replace(old, new)
            method.output_type = method.output_type.replace(old, new)
    pool.Add(fdp)


def enable_reflection(server: grpc.aio.Server, service_names: Sequence[str]) -> None:
    """Serve reflection (v1 and v1alpha) listing ``service_names`` and both reflection names."""
    pool = descriptor_pool.Default()
    _add_v1_descriptor(pool)
    servicer = ReflectionServicer((*service_names, V1_SERVICE, V1ALPHA_SERVICE), pool=pool)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    v1 = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(V1_SERVICE, {"ServerReflectionInfo": v1}),)
    )
