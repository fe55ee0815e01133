// Turns a protobuf-es service descriptor into a @grpc/grpc-js ServiceDefinition, so both ends of
// the agent channel share one serializer per message type, derived from the schema — never hand-written.
import { type DescMessage, type DescService, fromBinary, type MessageShape, toBinary } from "@bufbuild/protobuf";
import type { MethodDefinition, ServiceDefinition } from "@grpc/grpc-js";
import { hasFrameHeadroom, isEncodedMessage, markFrameHeadroom } from "./chunk-messages.js";

export function grpcServiceDefinition(service: DescService): ServiceDefinition {
  const definition: Record<string, MethodDefinition<unknown, unknown>> = {};
  for (const method of service.methods) {
    definition[method.localName] = {
      path: `/${service.typeName}/${method.name}`,
      requestStream: method.methodKind === "client_streaming" || method.methodKind === "bidi_streaming",
      responseStream: method.methodKind === "server_streaming" || method.methodKind === "bidi_streaming",
      requestSerialize: serializer(method.input),
      requestDeserialize: deserializer(method.input),
      responseSerialize: serializer(method.output),
      responseDeserialize: deserializer(method.output),
      originalName: method.localName,
    };
  }
  return definition as ServiceDefinition;
}

function serializer<D extends DescMessage>(schema: D) {
  return (message: unknown): Buffer => {
    // Chunk batches arrive already encoded (chunk-messages.ts); everything else is a message object.
    const bytes = isEncodedMessage(message) ? message : toBinary(schema, message as MessageShape<D>);
    const out = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    return hasFrameHeadroom(bytes) ? markFrameHeadroom(out) : out;
  };
}

function deserializer<D extends DescMessage>(schema: D) {
  // A malformed frame throws here; grpc-js turns that into an INTERNAL status for the call.
  return (bytes: Buffer): unknown => fromBinary(schema, bytes);
}
