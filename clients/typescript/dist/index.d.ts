export { WeftClient, Subscription, matches, type ClientOptions, type SubscribeOptions, type Position, type WeftEvent, type Member, type State, type StateChange, type Quality, type SubscribedInfo, type Snapshot, type Unrecovered, type Published, type PresenceInfo, type OutboxResult, type WebSocketLike, type Endpoint, type Priority, } from "./client.js";
export { WeftError, ServerError, TimeoutError, ConnectionError, ClosedError, QueueError, ProtocolError } from "./errors.js";
export { encode as encodeMsgpack, decode as decodeMsgpack } from "./msgpack.js";
export type { SecureMode, SecureOption, SealingChannel } from "./secure.js";
