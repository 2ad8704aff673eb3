// The part of workerd's `cloudflare:workers` module the repo's JavaScript uses (host/host.mjs), for
// the type checker (`tsc -p .`); workerd provides the module itself.
declare module "cloudflare:workers" {
  export class WorkerEntrypoint<Env = Record<string, any>> {
    protected env: Env;
    protected ctx: unknown;
    constructor(ctx: unknown, env: Env);
  }
}
