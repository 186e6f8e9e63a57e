/**
 * What the chat page needs from the TVM JavaScript runtime, bundled by `mlc web` into one
 * plain ES module (`tvmjs.js`). Bundled beside a copy of the wheel's `tvm/web/src`.
 */
export { instantiate, Scalar } from "./runtime";
export { createWASI } from "./wasi.ts";
