// What every endpoint family of the local cloud shares: the error type, the Cloudflare envelope,
// and parsing of request bodies and query parameters.

export class ApiError extends Error {
  /**
   * @param {number} status HTTP status
   * @param {number} code Cloudflare error code
   * @param {string} message
   * @param {Record<string, string>} [headers]
   */
  constructor(status, code, message, headers = {}) {
    super(message);
    this.status = status;
    this.code = code;
    this.headers = headers;
  }
}

/** 400 with code 7400, the API's answer to a malformed request. */
export const malformed = (message) => new ApiError(400, 7400, message);

/**
 * The answer of one endpoint: a result wrapped in the envelope by the server, or a raw body.
 * @typedef {{ result?: unknown, result_info?: object, status?: number }} Answer
 */

/**
 * The success envelope `{ success, errors, messages, result, result_info? }`.
 * @param {Answer} answer
 */
export function envelope({ result, result_info = undefined, status = 200 }) {
  return { status, body: { success: true, errors: [], messages: [], result, ...(result_info ? { result_info } : {}) } };
}

/** The failure envelope with one error. */
export function failure(code, message) {
  return { success: false, errors: [{ code, message }], messages: [], result: null };
}

/** Parses a JSON body or throws a 7400. */
export function parseJson(body) {
  try {
    return JSON.parse(body.toString("utf8"));
  } catch {
    throw malformed("The request body is not valid JSON");
  }
}

/** Parses a `multipart/form-data` body (the platform's own parser) or throws a 7400. */
export async function parseMultipart(headers, body) {
  const type = headers["content-type"] ?? "";
  if (!type.startsWith("multipart/form-data")) throw malformed("the body must be multipart/form-data");
  try {
    return await new Request("http://local/", { method: "POST", headers: { "content-type": type }, body }).formData();
  } catch {
    throw malformed("The multipart body could not be parsed");
  }
}

/** An integer query parameter within `[min, max]`, or `fallback` when absent. */
export function intParam(url, name, fallback, min, max) {
  const raw = url.searchParams.get(name);
  if (raw === null) return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < min || n > max) throw malformed(`${name} must be an integer from ${min} to ${max}`);
  return n;
}
