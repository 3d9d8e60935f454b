import * as tf from '@tensorflow/tfjs-core'
import { initBackend, Checkpoint, Span } from '@plexus/runtime'
await initBackend('wasm')
const heap = () => ((tf.backend() as any).wasm.HEAPU8.length / 2**20).toFixed(0) + ' MiB'
const ckpt = await Checkpoint.open('/tmp/m/small')
const span = await Span.load(ckpt, 0, 12)
console.log('after load', heap(), 'rss', (process.memoryUsage().rss/2**20).toFixed(0))
const c = span.newCache(256)
let t = performance.now(); await span.forward(new Float32Array(768), 1, c); console.log('first step ms', performance.now() - t, heap())
t = performance.now(); await span.forward(new Float32Array(768), 1, c); console.log('2nd step ms', performance.now() - t, heap())
t = performance.now(); await span.forward(new Float32Array(768*32), 32, c); console.log('32-token step ms', performance.now() - t, heap())
t = performance.now(); await span.forward(new Float32Array(768*32), 32, c); console.log('32-token step ms', performance.now() - t, heap())
t = performance.now(); await span.forward(new Float32Array(768), 1, c); console.log('1 step ms', performance.now() - t, heap())
