export { WeftClient, Subscription, matches, } from "./client.js";
export { WeftError, ServerError, TimeoutError, ConnectionError, ClosedError, QueueError, ProtocolError } from "./errors.js";
export { encode as encodeMsgpack, decode as decodeMsgpack } from "./msgpack.js";
