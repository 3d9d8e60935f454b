// The model directory's optional side files (tokenizer and chat-template configuration): absent is
// fine, present must be what it says.
import { readFile } from 'node:fs/promises'
import { CheckpointError } from './safetensors.ts'

/** The file's text, or undefined when there is no such file. */
export async function readOptional (path: string): Promise<string | undefined> {
  try {
    return await readFile(path, 'utf8')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined
    throw err
  }
}

/** The file's JSON object, or undefined when there is no such file. */
export async function readJsonObject (path: string): Promise<Record<string, unknown> | undefined> {
  const text = await readOptional(path)
  if (text === undefined) return undefined
  let parsed: unknown
  try {
    parsed = JSON.parse(text)
  } catch (err) {
    throw new CheckpointError(`${path} is not valid JSON: ${(err as Error).message}`)
  }
  if (parsed == null || typeof parsed !== 'object' || Array.isArray(parsed)) {
    throw new CheckpointError(`${path} must hold a JSON object`)
  }
  return parsed as Record<string, unknown>
}
