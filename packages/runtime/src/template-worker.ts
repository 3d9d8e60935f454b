// Worker thread entry: renders chat templates (see renderChatTemplate), one request at a time.
import { parentPort } from 'node:worker_threads'
import { applyChatTemplate } from './chat-template.ts'
import { TemplateError } from './template-render.ts'
import type { TemplateWorkerApi } from './template-render.ts'
import { serveCalls } from './worker-rpc.ts'

void serveCalls<TemplateWorkerApi>(parentPort!, () => ({
  render: (req) => {
    let text: string
    try {
      text = applyChatTemplate(req.config, req.messages, req.opts)
    } catch (err) {
      throw new TemplateError('template-invalid', (err as Error).message)
    }
    // measured here: a huge answer is refused without being copied back
    if (text.length > req.maxChars) throw new TemplateError('template-too-large', `chat template rendered ${text.length} characters, over the ${req.maxChars}-character limit`)
    return text
  }
}))
