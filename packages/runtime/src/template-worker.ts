// Worker thread entry: renders chat templates (see renderChatTemplate), one request at a time.
import { parentPort } from 'node:worker_threads'
import { applyChatTemplate } from './chat-template.ts'
import type { TemplateRequest, TemplateReply } from './template-render.ts'

const port = parentPort!
port.on('message', (req: TemplateRequest) => {
  let reply: TemplateReply
  try {
    const text = applyChatTemplate(req.config, req.messages, req.opts)
    // measured here: a huge answer is refused without being copied back
    reply = text.length > req.maxChars ? { id: req.id, ok: false, code: 'template-too-large', message: `rendered ${text.length} characters, over the ${req.maxChars}-character limit` } : { id: req.id, ok: true, text }
  } catch (err) {
    reply = { id: req.id, ok: false, code: 'template-invalid', message: (err as Error).message }
  }
  port.postMessage(reply)
})
